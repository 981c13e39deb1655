package api

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// problem is an RFC 9457 problem details object.
type problem struct {
	Type   string       `json:"type"`
	Title  string       `json:"title"`
	Status int          `json:"status"`
	Detail string       `json:"detail,omitempty"`
	Errors []fieldError `json:"errors,omitempty"`
}

// fieldError names one invalid field by JSON pointer (RFC 6901).
type fieldError struct {
	Pointer string `json:"pointer"`
	Detail  string `json:"detail"`
}

// Problem types; each is documented in openapi.yaml.
const (
	typeMalformed   = "/problems/malformed-request"
	typeValidation  = "/problems/validation"
	typeNotFound    = "/problems/not-found"
	typeKeyReused   = "/problems/idempotency-key-reused"
	typeTooLarge    = "/problems/body-too-large"
	typeMediaType   = "/problems/unsupported-media-type"
	typeMethod      = "/problems/method-not-allowed"
	typeUnavailable = "/problems/service-unavailable"
	typeInternal    = "/problems/internal"
	typeRateLimited = "/problems/rate-limited"
)

func writeProblem(w http.ResponseWriter, p problem) {
	body, _ := json.Marshal(p)
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(p.Status)
	w.Write(body)
}

func badRequest(w http.ResponseWriter, detail string, errs ...fieldError) {
	writeProblem(w, problem{Type: typeMalformed, Title: "Malformed request", Status: http.StatusBadRequest, Detail: detail, Errors: errs})
}

func unprocessable(w http.ResponseWriter, errs []fieldError) {
	writeProblem(w, problem{Type: typeValidation, Title: "Validation failed", Status: http.StatusUnprocessableEntity,
		Detail: "the request body has invalid fields", Errors: errs})
}
