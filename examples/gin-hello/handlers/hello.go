// Package handlers holds the service's handlers that live outside package main, so that edits
// touching several files and packages are realistic.
package handlers

import (
	"net/http"

	"github.com/gin-gonic/gin"
)

// Greeting is the word Hello greets with.
const Greeting = "hello"

// Hello answers GET /hello/:name with a greeting for name.
func Hello(c *gin.Context) {
	c.JSON(http.StatusOK, gin.H{"message": Greeting + ", " + c.Param("name")})
}
