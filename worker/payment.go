package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/orderpipe/orderpipe/events"
)

// PaymentClient calls the payment provider (paymentsim's API).
//
// While the provider refuses every request (an answer that says so, see Charge), the
// client stops calling it: each Charge fails at once with a provider-down error, but for
// one probe every ProbeInterval, whose answer tells whether it still refuses.
type PaymentClient struct {
	BaseURL string
	HTTP    *http.Client
	// ProbeInterval is how often one payment is let through while the provider refuses
	// every request. Default 5s.
	ProbeInterval time.Duration
	// OnRefusing, when set, is called as the provider starts refusing every request
	// (with the answer that says so) and as it stops (nil).
	OnRefusing func(refusal error)

	mu        sync.Mutex
	refusal   error // the last refusal while the provider refuses everyone, else nil
	lastProbe time.Time
}

// chargeRequest is the provider's POST /payments body; amount in minor units.
type chargeRequest struct {
	OrderID  int64  `json:"orderId"`
	Amount   int64  `json:"amount"`
	Currency string `json:"currency"`
}

// Charge is the provider's answer.
type Charge struct {
	ID       string `json:"id"`
	Status   string `json:"status"` // approved or declined
	Reason   string `json:"reason"`
	Approved bool   `json:"-"`
}

// Charge asks the provider to charge an order once per idempotencyKey: the same key
// always gets the same answer and never a second charge, so a retry after a timeout is
// safe. A decline is an answer, not an error. Errors are unavailable (no answer; 429,
// 502, 503, 504), provider down (401, 403, 404, 405, 407, 408: it would refuse every
// order), permanent (any other 4xx: it will never accept this request) or transient (409,
// other 5xx, an unreadable answer); see errors.go for what each leads to.
func (c *PaymentClient) Charge(ctx context.Context, idempotencyKey string, orderID, amountMinor int64, currency string) (Charge, error) {
	if err := c.admit(); err != nil {
		return Charge{}, err
	}
	ch, answered, err := c.charge(ctx, idempotencyKey, orderID, amountMinor, currency)
	if answered {
		c.observe(err)
	}
	return ch, err
}

// admit lets a call through unless the provider refuses everyone and this is not the
// time for a probe.
func (c *PaymentClient) admit() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.refusal == nil {
		return nil
	}
	interval := c.ProbeInterval
	if interval <= 0 {
		interval = 5 * time.Second
	}
	if time.Since(c.lastProbe) >= interval {
		c.lastProbe = time.Now()
		return nil
	}
	return providerDown(fmt.Errorf("payment provider refuses every request, not called (probing every %s): %w", interval, c.refusal))
}

// observe records whether the provider's answer refuses everyone.
func (c *PaymentClient) observe(err error) {
	c.mu.Lock()
	was := c.refusal
	if isProviderDown(err) {
		c.refusal, c.lastProbe = err, time.Now()
	} else {
		c.refusal = nil
	}
	now := c.refusal
	c.mu.Unlock()
	if c.OnRefusing != nil && (was == nil) != (now == nil) {
		c.OnRefusing(now)
	}
}

// charge makes the call; answered reports whether the provider answered at all.
func (c *PaymentClient) charge(ctx context.Context, idempotencyKey string, orderID, amountMinor int64, currency string) (_ Charge, answered bool, _ error) {
	body, err := json.Marshal(chargeRequest{OrderID: orderID, Amount: amountMinor, Currency: currency})
	if err != nil {
		return Charge{}, false, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.BaseURL+"/payments", bytes.NewReader(body))
	if err != nil {
		return Charge{}, false, permanent(fmt.Errorf("payment request: %w", err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", idempotencyKey)
	if id := events.CorrelationID(ctx); id != "" {
		req.Header.Set("X-Correlation-ID", id) // the provider logs it
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		// No answer (refused, reset, timed out): the provider is unreachable, not
		// refusing this order. Retrying with the same key is safe.
		return Charge{}, false, unavailable(fmt.Errorf("payment call: %w", err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Charge{}, false, unavailable(fmt.Errorf("payment response: %w", err))
	}
	switch {
	case resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPaymentRequired:
		var ch Charge
		if err := json.Unmarshal(data, &ch); err != nil || (ch.Status != "approved" && ch.Status != "declined") {
			return Charge{}, true, fmt.Errorf("payment response %d: unreadable body %.200q", resp.StatusCode, data)
		}
		ch.Approved = ch.Status == "approved"
		return ch, true, nil
	case resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests ||
		resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusGatewayTimeout:
		// The provider (or its gateway) is down or shedding load: a state of the service,
		// not a verdict on this order. Like no answer at all, it holds the order.
		return Charge{}, true, unavailable(fmt.Errorf("payment provider answered %d: %.200s", resp.StatusCode, data))
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden ||
		resp.StatusCode == http.StatusProxyAuthRequired || resp.StatusCode == http.StatusNotFound ||
		resp.StatusCode == http.StatusMethodNotAllowed || resp.StatusCode == http.StatusRequestTimeout:
		// Not about this order: our credentials (401, 403, 407) or PAYMENT_URL (404, 405)
		// are wrong, or the provider cannot take requests (408). Every order would get
		// the same answer, so none is poisoned for it.
		return Charge{}, true, providerDown(fmt.Errorf("payment provider refuses the request with %d (check PAYMENT_URL and credentials): %.200s", resp.StatusCode, data))
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusConflict:
		return Charge{}, true, fmt.Errorf("payment provider answered %d: %.200s", resp.StatusCode, data)
	default:
		return Charge{}, true, permanent(fmt.Errorf("payment provider rejected the request with %d: %.200s", resp.StatusCode, data))
	}
}
