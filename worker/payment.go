package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/orderpipe/orderpipe/events"
)

// PaymentClient calls the payment provider (paymentsim's API).
type PaymentClient struct {
	BaseURL string
	HTTP    *http.Client
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
// safe. A decline is an answer, not an error. Errors are transient (network, timeout,
// 5xx) unless marked permanent (a request the provider will never accept).
func (c *PaymentClient) Charge(ctx context.Context, idempotencyKey string, orderID, amountMinor int64, currency string) (Charge, error) {
	body, err := json.Marshal(chargeRequest{OrderID: orderID, Amount: amountMinor, Currency: currency})
	if err != nil {
		return Charge{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.BaseURL+"/payments", bytes.NewReader(body))
	if err != nil {
		return Charge{}, permanent(fmt.Errorf("payment request: %w", err))
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
		return Charge{}, unavailable(fmt.Errorf("payment call: %w", err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Charge{}, fmt.Errorf("payment response: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPaymentRequired:
		var ch Charge
		if err := json.Unmarshal(data, &ch); err != nil || (ch.Status != "approved" && ch.Status != "declined") {
			return Charge{}, fmt.Errorf("payment response %d: unreadable body %.200q", resp.StatusCode, data)
		}
		ch.Approved = ch.Status == "approved"
		return ch, nil
	case resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests ||
		resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusGatewayTimeout:
		// The provider (or its gateway) is down or shedding load: a state of the service,
		// not a verdict on this order. Like no answer at all, it holds the order.
		return Charge{}, unavailable(fmt.Errorf("payment provider answered %d: %.200s", resp.StatusCode, data))
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusConflict:
		return Charge{}, fmt.Errorf("payment provider answered %d: %.200s", resp.StatusCode, data)
	default:
		return Charge{}, permanent(fmt.Errorf("payment provider rejected the request with %d: %.200s", resp.StatusCode, data))
	}
}
