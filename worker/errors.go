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
//     Unavailability has an end for one message (unavailableBudget): held past
//     UnavailableBudget while other messages are processed, it is poisoned.
//   - provider down, a kind of unavailable: the provider refuses requests in a way that
//     says it refuses everyone (see PaymentClient.Charge): we are misconfigured or it is
//     down. Never poisoned, and it spends no message's budget; the payment client stops
//     calling it but for one probe at a time (the partitions then pause, their windows
//     full), and an alert fires.
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

type providerDownError struct{ err error }

func (e *providerDownError) Error() string { return e.err.Error() }
func (e *providerDownError) Unwrap() error { return e.err }

func providerDown(err error) error { return &providerDownError{err} }

// isProviderDown reports whether err means the payment provider refuses everyone.
func isProviderDown(err error) bool {
	var d *providerDownError
	return errors.As(err, &d)
}

// isUnavailable reports whether err means a dependency is down.
func isUnavailable(err error) bool {
	var u *unavailableError
	return errors.As(err, &u) || isProviderDown(err) ||
		(!isPermanent(err) && (postgres.IsUnavailable(err) || errors.Is(err, context.Canceled)))
}

// shouldPoison decides, once retries are over, whether the message goes to the poison
// queue (true) or is nacked for redelivery (false).
func shouldPoison(err error) bool { return !isUnavailable(err) }
