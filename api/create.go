package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/orderpipe/orderpipe/orders"
)

// maxBody bounds POST bodies; an order is a few dozen bytes.
const maxBody = 64 << 10

// createOrder handles POST /orders. The order, its OrderCreated outbox row and the
// idempotency record are written in one transaction.
func (s *Server) createOrder(w http.ResponseWriter, r *http.Request) {
	key, ok := idempotencyKey(w, r)
	if !ok {
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		writeProblem(w, problem{Type: typeMediaType, Title: "Unsupported media type", Status: http.StatusUnsupportedMediaType,
			Detail: "send the order as Content-Type: application/json"})
		return
	}
	body, err := readBody(w, r)
	if err != nil {
		return
	}
	req, fieldErrs, err := decodeCreate(body)
	var de *decodeError
	switch {
	case errors.As(err, &de):
		badRequest(w, de.detail)
		return
	case len(fieldErrs) > 0:
		unprocessable(w, fieldErrs)
		return
	}

	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.DBTimeout)
	defer cancel()
	// The OrderCreated event carries this span's context (traceparent) to the relay
	// and the worker.
	ctx, span := s.tracer.Start(ctx, "create order")
	defer span.End()
	resp, replayed, err := s.store.Create(ctx, orders.NewOrder{
		CustomerID: req.CustomerID, Amount: req.Amount,
		Key: key, Fingerprint: req.fingerprint(), KeyTTL: s.cfg.IdempotencyTTL,
	}, func(o orders.Order) ([]byte, error) { return json.Marshal(toJSON(o)) })
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "create order")
		s.fail(w, r, err)
		return
	}
	if resp.OrderID != 0 {
		w.Header().Set("Location", "/orders/"+strconv.FormatInt(resp.OrderID, 10))
		span.SetAttributes(attribute.Int64("orderpipe.order_id", resp.OrderID))
	}
	if replayed {
		w.Header().Set("Idempotent-Replayed", "true")
		span.SetAttributes(attribute.Bool("orderpipe.replayed", true))
	} else {
		s.metrics.created.Inc()
	}
	writeJSON(w, resp.StatusCode, resp.Body)
}

// idempotencyKey returns the request's Idempotency-Key ("" when absent). A key is 1-255
// printable ASCII characters, sent once; anything else is answered 400 here.
func idempotencyKey(w http.ResponseWriter, r *http.Request) (string, bool) {
	values := r.Header.Values("Idempotency-Key")
	switch len(values) {
	case 0:
		return "", true
	case 1:
	default:
		badRequest(w, "send the Idempotency-Key header once")
		return "", false
	}
	key := values[0]
	if len(key) < 1 || len(key) > 255 {
		badRequest(w, "Idempotency-Key must be 1 to 255 characters")
		return "", false
	}
	if !printable(key, 255) {
		badRequest(w, "Idempotency-Key must be printable ASCII without spaces")
		return "", false
	}
	return key, true
}

// readBody reads at most maxBody bytes; it answers 413 or 400 itself on failure.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		writeProblem(w, problem{Type: typeTooLarge, Title: "Request body too large", Status: http.StatusRequestEntityTooLarge,
			Detail: "the body must be at most 64 KiB"})
	case err != nil:
		badRequest(w, "could not read the request body")
	}
	return body, err
}
