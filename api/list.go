package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/orderpipe/orderpipe/orders"
)

const (
	defaultPageSize = 20
	maxPageSize     = 100
	cursorPrefix    = "v1:"
)

type listJSON struct {
	Items      []orderJSON `json:"items"`
	NextCursor *string     `json:"nextCursor"`
}

// listOrders handles GET /orders?customerId=&status=&limit=&cursor=: newest first, by
// keyset. The cursor is opaque to clients; it encodes the last id of the page.
func (s *Server) listOrders(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := orders.ListFilter{Limit: defaultPageSize}
	var errs []fieldError
	for _, name := range slices.Sorted(maps.Keys(q)) {
		switch name {
		case "customerId", "status", "limit", "cursor":
			if len(q[name]) > 1 {
				errs = append(errs, fieldError{"/" + name, "must be given at most once"})
			} else if q.Get(name) == "" {
				errs = append(errs, fieldError{"/" + name, "must not be empty; leave it out instead"})
			}
		default:
			errs = append(errs, fieldError{"/" + name, "is not a known query parameter"})
		}
	}
	if v := q.Get("customerId"); v != "" {
		if !customerIDPattern.MatchString(v) {
			errs = append(errs, fieldError{"/customerId", "must be 1-64 characters of A-Z, a-z, 0-9, _ and -"})
		}
		f.CustomerID = v
	}
	if v := q.Get("status"); v != "" {
		switch st := orders.Status(v); st {
		case orders.StatusPending, orders.StatusPaid, orders.StatusPaymentFailed:
			f.Status = st
		default:
			errs = append(errs, fieldError{"/status", "must be PENDING, PAID or PAYMENT_FAILED"})
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPageSize {
			errs = append(errs, fieldError{"/limit", "must be a whole number from 1 to 100"})
		}
		f.Limit = n
	}
	if v := q.Get("cursor"); v != "" {
		id, ok := decodeCursor(v)
		if !ok {
			errs = append(errs, fieldError{"/cursor", "is not a cursor this API returned"})
		}
		f.BeforeID = id
	}
	if len(errs) > 0 {
		badRequest(w, "invalid query parameters", errs...)
		return
	}

	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.DBTimeout)
	defer cancel()
	want := f.Limit
	f.Limit++ // one more tells whether there is a next page
	list, err := s.store.List(ctx, f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := listJSON{Items: make([]orderJSON, 0, len(list))}
	if len(list) > want {
		list = list[:want]
		c := encodeCursor(list[want-1].ID)
		out.NextCursor = &c
	}
	for _, o := range list {
		out.Items = append(out.Items, toJSON(o))
	}
	body, err := json.Marshal(out)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, body)
}

func encodeCursor(lastID int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorPrefix + strconv.FormatInt(lastID, 10)))
}

func decodeCursor(c string) (int64, bool) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || !strings.HasPrefix(string(b), cursorPrefix) {
		return 0, false
	}
	id, err := strconv.ParseInt(strings.TrimPrefix(string(b), cursorPrefix), 10, 64)
	return id, err == nil && id > 0
}
