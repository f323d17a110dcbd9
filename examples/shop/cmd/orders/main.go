// orders is the shop's back end: the gateway calls it by its Service name.
//
// Edit ordersMessage, save, and with `kdev watch` running the gateway's /orders shows the new
// text about a second later.
package main

import (
	"net/http"

	"example.com/shop/internal/server"
	"example.com/shop/internal/version"
)

// ordersMessage is what GET /orders says.
const ordersMessage = "no orders yet"

// Orders is the answer to GET /orders.
type Orders struct {
	Service string `json:"service"`
	Message string `json:"message"`
	Version string `json:"version"`
}

func newMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /orders", func(w http.ResponseWriter, _ *http.Request) {
		server.WriteJSON(w, http.StatusOK, Orders{
			Service: "orders",
			Message: ordersMessage,
			Version: version.Version,
		})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok"))
	})
	return mux
}

func main() {
	server.Run("orders", newMux())
}
