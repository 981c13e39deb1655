package paymentsim

import (
	"fmt"
	"strings"
	"text/tabwriter"
)

// Kind names a deterministic behaviour of the simulator.
type Kind string

// The behaviours a request can choose by its amount; see Behaviours.
const (
	KindApprove                Kind = "approve"
	KindInsufficientFunds      Kind = "insufficient_funds"
	KindCardDeclined           Kind = "card_declined"
	KindError                  Kind = "error"
	KindUnavailable            Kind = "unavailable"
	KindUnavailableThenApprove Kind = "unavailable_then_approve"
	KindSlow                   Kind = "slow"
	KindTimeoutAfterCharge     Kind = "timeout_after_charge"
	KindResetThenApprove       Kind = "reset_then_approve"
)

// Behaviour is one row of the test-amount table: a request whose amount in minor units
// ends in From..To (amount % 100, both inclusive) gets Kind.
type Behaviour struct {
	From, To int64
	Kind     Kind
	// Answer says what the client sees, as the package documentation puts it.
	Answer string
}

// Behaviours is the test-amount table, the simulator's equivalent of a provider's test
// card numbers. Suffixes it does not list approve. It is the source of the table in the
// package documentation (a test keeps the two equal) and of the README's; treat it as
// read-only.
var Behaviours = []Behaviour{
	{0, 50, KindApprove, "201 approved; the random behaviours apply"},
	{51, 51, KindInsufficientFunds, "402 declined, reason insufficient_funds"},
	{52, 52, KindCardDeclined, "402 declined, reason card_declined"},
	{61, 61, KindError, "500 on every attempt"},
	{62, 62, KindUnavailable, "503 on every attempt"},
	{63, 63, KindUnavailableThenApprove, "503 on a key's first 2 attempts, then 201 approved"},
	{71, 71, KindSlow, "201 approved after Config.SlowDelay (default 2s), replays too"},
	{72, 72, KindTimeoutAfterCharge, "charges, answers 201 after Config.TimeoutDelay (default 10s); replays at once"},
	{73, 73, KindResetThenApprove, "connection reset on a key's first attempt, then 201 approved"},
}

// BehaviourFor returns the row of Behaviours that amount (in minor units) selects, or
// the approve row for suffixes the table does not list.
func BehaviourFor(amount int64) Behaviour {
	suffix := amount % 100
	if suffix < 0 {
		suffix = -suffix
	}
	for _, b := range Behaviours {
		if b.From <= suffix && suffix <= b.To {
			return b
		}
	}
	return Behaviour{From: suffix, To: suffix, Kind: KindApprove, Answer: Behaviours[0].Answer}
}

// Table renders Behaviours as aligned plain text, one row a line, for documentation.
func Table() string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "amount%100\tkind\tanswer")
	for _, r := range Behaviours {
		suffix := fmt.Sprintf("%02d", r.From)
		if r.To != r.From {
			suffix += fmt.Sprintf("-%02d", r.To)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", suffix, r.Kind, r.Answer)
	}
	tw.Flush()
	return b.String()
}
