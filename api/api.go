// Package api embeds Meridian's OpenAPI 3.1 document (openapi.json), the description of the data
// node's HTTP API that the node serves at /openapi.json and its tests check responses against.
// It holds no code besides the embedding; edit openapi.json together with the handlers.
package api

import _ "embed"

// OpenAPI is the OpenAPI 3.1 document, as JSON.
//
//go:embed openapi.json
var OpenAPI []byte
