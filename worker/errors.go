package worker

import (
	"context"
	"errors"

	"github.com/orderpipe/orderpipe/internal/postgres"
)

// A failure is one of three kinds, and the kind decides what happens to the message:
//
//   - permanent: no retry can help (an undecodable or unknown event, an order that does
//     not exist, a request the payment provider rejects). Poisoned at once, no retries.
//   - transient, the default: the provider answered 500 (or 409: the key is in flight),
//     or something else failed that may pass. Retried with backoff; poisoned with its
//     reason when retries run out.
//   - unavailable: a dependency cannot be reached (Postgres down, the provider not
//     answering) or says it cannot serve now (the provider's 503, 429, 502, 504). The message is not at fault, so it is never poisoned: after the
//     retries it is nacked and redelivered, holding its order (and, once the window is
//     full behind it, its partition) until the dependency is back. An outage therefore delays orders but poisons none. A failure caused by
//     the message's context being cancelled (the worker shutting down, or the partition
//     moving to another worker in a rebalance) counts as unavailable too: it says nothing
//     about the message, which the partition's next owner processes.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(err error) error { return &permanentError{err} }

// isPermanent reports whether err (or any error it wraps) is permanent.
func isPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

type unavailableError struct{ err error }

func (e *unavailableError) Error() string { return e.err.Error() }
func (e *unavailableError) Unwrap() error { return e.err }

func unavailable(err error) error { return &unavailableError{err} }

// isUnavailable reports whether err means a dependency is down.
func isUnavailable(err error) bool {
	var u *unavailableError
	return errors.As(err, &u) || (!isPermanent(err) && (postgres.IsUnavailable(err) || errors.Is(err, context.Canceled)))
}

// shouldPoison decides, once retries are over, whether the message goes to the poison
// queue (true) or is nacked for redelivery (false).
func shouldPoison(err error) bool { return !isUnavailable(err) }
