package worker

import "errors"

// permanentError marks a failure that no retry can fix: an undecodable or unknown event,
// an order that does not exist, a request the payment provider will never accept. Such
// messages skip the retries and go straight to the poison queue.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(err error) error { return &permanentError{err} }

// isPermanent reports whether err (or any error it wraps) is permanent.
func isPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}
