package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"example.com/shop/internal/version"
)

func TestOrders(t *testing.T) {
	w := httptest.NewRecorder()
	newMux().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/orders", nil))
	var got Orders
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatalf("GET /orders: body %q is not JSON: %v", w.Body.String(), err)
	}
	want := Orders{Service: "orders", Message: ordersMessage, Version: version.Version}
	if w.Code != http.StatusOK || got != want {
		t.Fatalf("GET /orders = %d %+v, want 200 %+v", w.Code, got, want)
	}
}

func TestOnlyGet(t *testing.T) {
	w := httptest.NewRecorder()
	newMux().ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/orders", nil))
	if w.Code != http.StatusMethodNotAllowed {
		t.Fatalf("POST /orders = %d, want 405", w.Code)
	}
}
