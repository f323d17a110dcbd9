// gateway is the shop's front door: GET /orders asks the orders service, by its Service name,
// and wraps the answer in its own.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"example.com/shop/internal/server"
	"example.com/shop/internal/version"
)

// gatewayMessage is what GET /orders says next to the orders service's answer.
const gatewayMessage = "welcome to the shop"

// ordersTimeout bounds a call to the orders service, so a missing one is a quick 502.
const ordersTimeout = 2 * time.Second

// defaultOrdersURL is the orders service by its Service name: cluster DNS resolves `orders` in
// the pod's own namespace (kdev points it at the developer's own copy).
const defaultOrdersURL = "http://orders:8080"

// Answer is the answer to GET /orders.
type Answer struct {
	Service string          `json:"service"`
	Message string          `json:"message"`
	Orders  json.RawMessage `json:"orders"`
	Version string          `json:"version"`
}

// Failure is the answer when the orders service cannot be reached or answers badly.
type Failure struct {
	Service string `json:"service"`
	Error   string `json:"error"`
	Version string `json:"version"`
}

type gateway struct {
	ordersURL string
	client    *http.Client
}

func newGateway(ordersURL string) *gateway {
	return &gateway{ordersURL: ordersURL, client: &http.Client{Timeout: ordersTimeout}}
}

func (g *gateway) mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /orders", g.orders)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok"))
	})
	return mux
}

func (g *gateway) orders(w http.ResponseWriter, r *http.Request) {
	body, err := g.fetchOrders(r.Context())
	if err != nil {
		server.WriteJSON(w, http.StatusBadGateway, Failure{
			Service: "gateway",
			Error:   err.Error(),
			Version: version.Version,
		})
		return
	}
	server.WriteJSON(w, http.StatusOK, Answer{
		Service: "gateway",
		Message: gatewayMessage,
		Orders:  body,
		Version: version.Version,
	})
}

// fetchOrders returns the orders service's answer to GET /orders, which must be a 200 with a
// JSON body.
func (g *gateway) fetchOrders(ctx context.Context) (json.RawMessage, error) {
	url := g.ordersURL + "/orders"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := g.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("GET %s: reading the body: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if !json.Valid(body) {
		return nil, fmt.Errorf("GET %s: the body is not JSON: %.100q", url, body)
	}
	return json.RawMessage(body), nil
}

func main() {
	ordersURL := os.Getenv("ORDERS_URL")
	if ordersURL == "" {
		ordersURL = defaultOrdersURL
	}
	server.Run("gateway", newGateway(ordersURL).mux())
}
