package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/gin-gonic/gin"
)

func get(t *testing.T, path string) (int, map[string]string) {
	t.Helper()
	gin.SetMode(gin.TestMode)
	w := httptest.NewRecorder()
	newRouter().ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
	var body map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("GET %s: body %q is not a JSON object: %v", path, w.Body.String(), err)
	}
	return w.Code, body
}

func TestPing(t *testing.T) {
	code, body := get(t, "/ping")
	if code != http.StatusOK || body["message"] != pingMessage {
		t.Fatalf("GET /ping = %d %v, want 200 message=%q", code, body, pingMessage)
	}
}

func TestHello(t *testing.T) {
	code, body := get(t, "/hello/gopher")
	if code != http.StatusOK || body["message"] != "hello, gopher" {
		t.Fatalf("GET /hello/gopher = %d %v, want 200 message=%q", code, body, "hello, gopher")
	}
}
