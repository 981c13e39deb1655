package api

import (
	_ "embed"
	"net/http"
	"strconv"
)

// openAPIDocument is the API's contract. It is compiled into the binary so the document a
// client downloads is the one this build was tested against.
//
//go:embed openapi.yaml
var openAPIDocument []byte

// serveOpenAPI handles GET /openapi.yaml.
func serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	// application/yaml is the registered type (RFC 9512).
	w.Header().Set("Content-Type", "application/yaml")
	w.Header().Set("Content-Length", strconv.Itoa(len(openAPIDocument)))
	w.Write(openAPIDocument)
}
