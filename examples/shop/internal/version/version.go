// Package version is shared by every service of the shop: a change here rebuilds them all.
package version

// Version is what every service reports in its answers.
const Version = "1.0.0"
