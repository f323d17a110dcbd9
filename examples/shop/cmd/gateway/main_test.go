package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"example.com/shop/internal/version"
)

func get(t *testing.T, g *gateway) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	g.mux().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/orders", nil))
	return w
}

func TestOrdersWrapsTheOrdersAnswer(t *testing.T) {
	const ordersBody = `{"service":"orders","message":"two","version":"x"}`
	orders := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/orders" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(ordersBody + "\n"))
	}))
	defer orders.Close()

	w := get(t, newGateway(orders.URL))
	if w.Code != http.StatusOK {
		t.Fatalf("GET /orders = %d %s, want 200", w.Code, w.Body)
	}
	want := `{"service":"gateway","message":"` + gatewayMessage + `","orders":` + ordersBody +
		`,"version":"` + version.Version + `"}` + "\n"
	if w.Body.String() != want {
		t.Fatalf("GET /orders answered\n%s\nwant\n%s", w.Body, want)
	}
}

func TestOrdersUnreachableIs502(t *testing.T) {
	orders := httptest.NewServer(http.NotFoundHandler())
	url := orders.URL
	orders.Close() // nothing listens there any more

	w := get(t, newGateway(url))
	var got Failure
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatalf("body %q is not JSON: %v", w.Body, err)
	}
	if w.Code != http.StatusBadGateway || got.Service != "gateway" || got.Error == "" {
		t.Fatalf("GET /orders = %d %+v, want 502 with the error", w.Code, got)
	}
}

func TestOrdersErrorStatusIs502(t *testing.T) {
	orders := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
	}))
	defer orders.Close()

	w := get(t, newGateway(orders.URL))
	if w.Code != http.StatusBadGateway || !strings.Contains(w.Body.String(), "503") {
		t.Fatalf("GET /orders = %d %s, want 502 naming the 503", w.Code, w.Body)
	}
}
