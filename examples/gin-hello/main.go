// gin-hello is the example service kdev's demo and end-to-end tests develop against.
//
// Edit pingMessage (or anything under handlers/), save, and with `kdev watch` running the pod
// serves the new code about a second later.
package main

import (
	"context"
	"errors"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"

	"example.com/gin-hello/handlers"
)

// pingMessage is what GET /ping answers. The tests rewrite this line to check that an edit
// reaches the running pod.
const pingMessage = "pong"

// shutdownTimeout bounds how long in-flight requests may take once SIGTERM arrives. It is short
// so that a restart frees the port quickly.
const shutdownTimeout = 5 * time.Second

// ping answers GET /ping.
func ping(c *gin.Context) {
	c.JSON(http.StatusOK, gin.H{"message": pingMessage})
}

// newRouter builds the service's routes; main and the tests share it.
func newRouter() *gin.Engine {
	r := gin.New()
	r.Use(gin.Recovery())
	r.GET("/ping", ping)
	r.GET("/hello/:name", handlers.Hello)
	r.GET("/healthz", func(c *gin.Context) { c.String(http.StatusOK, "ok") })
	return r
}

func main() {
	// Release mode unless the developer asks otherwise (GIN_MODE=debug): no debug banner noise.
	if os.Getenv(gin.EnvGinMode) == "" {
		gin.SetMode(gin.ReleaseMode)
	}

	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	srv := &http.Server{
		Addr:              ":" + port,
		Handler:           newRouter(),
		ReadHeaderTimeout: 10 * time.Second,
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	errc := make(chan error, 1)
	go func() {
		log.Printf("gin-hello listening on %s", srv.Addr)
		errc <- srv.ListenAndServe()
	}()

	select {
	case err := <-errc:
		// The listener failed (e.g. the port is taken): exit non-zero so the supervisor sees it.
		log.Fatalf("gin-hello: %v", err)
	case <-ctx.Done():
	}

	// Stop accepting, let in-flight requests finish, then return so the port is free for the
	// next build of the app.
	log.Printf("gin-hello shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Printf("gin-hello: shutdown: %v", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Printf("gin-hello: %v", err)
	}
}
