package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/orderpipe/orderpipe/money"
)

// createRequest is a validated POST /orders body.
type createRequest struct {
	CustomerID string
	Amount     money.Amount
}

// fingerprint identifies the request's meaning, so that the same order sent again with
// other whitespace or "200.00" for "200" still counts as the same request.
func (r createRequest) fingerprint() []byte {
	h := sha256.New()
	h.Write([]byte(r.CustomerID))
	h.Write([]byte{0})
	h.Write([]byte(r.Amount.Currency))
	binary.Write(h, binary.BigEndian, r.Amount.Minor)
	return h.Sum(nil)
}

var customerIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// readOnlyFields are order fields the server sets; a client sending them is told so
// instead of having them silently ignored (mass assignment).
var readOnlyFields = map[string]bool{"id": true, "status": true, "version": true, "createdAt": true, "updatedAt": true}

// decodeError is a body that cannot be read as one JSON object (400), as opposed to an
// object with invalid fields (422).
type decodeError struct{ detail string }

func (e *decodeError) Error() string { return e.detail }

// decodeCreate parses a POST /orders body strictly. encoding/json alone would accept
// duplicate keys (the last wins), match field names case-insensitively and ignore
// unknown fields, so the object is walked token by token. It returns a *decodeError
// for malformed input, or the field errors for a well-formed object with invalid fields.
func decodeCreate(body []byte) (createRequest, []fieldError, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return createRequest{}, nil, &decodeError{"body is not valid JSON"}
	}
	if tok != json.Delim('{') {
		return createRequest{}, nil, &decodeError{"body must be a JSON object"}
	}
	fields := map[string]json.RawMessage{}
	seen := map[string]string{}
	var errs []fieldError
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return createRequest{}, nil, &decodeError{"body is not valid JSON"}
		}
		key := tok.(string) // inside an object the decoder yields only string keys
		if first, dup := seen[strings.ToLower(key)]; dup {
			return createRequest{}, nil, &decodeError{fmt.Sprintf("duplicate key %q (also given as %q)", key, first)}
		}
		seen[strings.ToLower(key)] = key
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return createRequest{}, nil, &decodeError{"body is not valid JSON"}
		}
		switch {
		case key == "customerId" || key == "amount" || key == "currency":
			fields[key] = raw
		case readOnlyFields[key]:
			errs = append(errs, fieldError{pointer(key), "is read-only and set by the server"})
		default:
			errs = append(errs, fieldError{pointer(key), "is not a known field"})
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return createRequest{}, nil, &decodeError{"body is not valid JSON"}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return createRequest{}, nil, &decodeError{"unexpected data after the JSON object"}
	}

	var req createRequest
	customerID, ok := stringField(fields, "customerId", &errs)
	if ok {
		if customerIDPattern.MatchString(customerID) {
			req.CustomerID = customerID
		} else {
			errs = append(errs, fieldError{"/customerId", "must be 1-64 characters of A-Z, a-z, 0-9, _ and -"})
		}
	}
	currency, currencyOK := stringField(fields, "currency", &errs)
	if currencyOK {
		if _, known := money.MinorDigits(currency); !known {
			errs = append(errs, fieldError{"/currency", "must be a supported uppercase ISO 4217 code such as USD"})
			currencyOK = false
		}
	}
	raw, present := fields["amount"]
	switch {
	case !present:
		errs = append(errs, fieldError{"/amount", "is required"})
	case !isJSONNumber(raw):
		errs = append(errs, fieldError{"/amount", "must be a JSON number"})
	case currencyOK:
		amount, err := money.Parse(string(raw), currency)
		if err != nil {
			errs = append(errs, fieldError{"/amount", amountDetail(err, currency)})
		}
		req.Amount = amount
	}
	return req, errs, nil
}

func stringField(fields map[string]json.RawMessage, name string, errs *[]fieldError) (string, bool) {
	raw, ok := fields[name]
	if !ok {
		*errs = append(*errs, fieldError{pointer(name), "is required"})
		return "", false
	}
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		*errs = append(*errs, fieldError{pointer(name), "must be a string"})
		return "", false
	}
	return s, true
}

func isJSONNumber(raw json.RawMessage) bool {
	return len(raw) > 0 && (raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9'))
}

func amountDetail(err error, currency string) string {
	switch {
	case errors.Is(err, money.ErrNotPositive):
		return "must be greater than zero"
	case errors.Is(err, money.ErrTooPrecise):
		digits, _ := money.MinorDigits(currency)
		return fmt.Sprintf("has more than %d decimal places, the most %s allows", digits, currency)
	case errors.Is(err, money.ErrOverflow):
		return "is too large"
	default:
		return "must be a plain decimal number in major units, such as 19.99"
	}
}

// pointer is the RFC 6901 JSON pointer to a top-level member.
func pointer(key string) string {
	return "/" + strings.NewReplacer("~", "~0", "/", "~1").Replace(key)
}
