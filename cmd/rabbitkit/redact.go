package main

// Redaction: no password of a DSN or URL is ever printed.

import (
	"net/url"
	"regexp"
	"strings"
)

// redactURL returns s with the password of a URL (scheme://user:pass@host) or of a key=value DSN
// (password=...) replaced by "xxxxx".
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
			return u.String()
		}
		return s
	}
	return kvPassword.ReplaceAllString(s, "${1}xxxxx")
}

var kvPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('[^']*'|\S+)`)

// redactedError is an error whose text has the secrets of a DSN or URL removed; it still
// unwraps to the original for errors.Is.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redactErr returns err with every occurrence of secret's password removed from its text.
func redactErr(err error, secret string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	for _, p := range passwords(secret) {
		msg = strings.ReplaceAll(msg, p, "xxxxx")
	}
	msg = strings.ReplaceAll(msg, secret, redactURL(secret))
	return &redactedError{msg: msg, err: err}
}

// passwords returns the password in s (a URL or a key=value DSN), if any, also URL-escaped.
func passwords(s string) []string {
	var out []string
	if u, err := url.Parse(s); err == nil && u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			out = append(out, p, url.QueryEscape(p), url.PathEscape(p))
		}
	}
	if m := kvPassword.FindStringSubmatch(s); m != nil {
		out = append(out, strings.Trim(m[2], "'"))
	}
	return out
}
