package protocol

import "strings"

// DefaultStream returns the default sequence space for a destination: the escaped exchange name, a
// slash, the escaped routing key. Escaping ('%' -> "%25", '/' -> "%2F") keeps distinct destinations
// distinct even when names contain slashes. The stream always travels in the stamp: a consumer
// never derives it from the delivery's exchange and routing key, which a dead-letter or a shovel
// rewrites.
func DefaultStream(exchange, routingKey string) string {
	return escape(exchange) + "/" + escape(routingKey)
}

var escaper = strings.NewReplacer("%", "%25", "/", "%2F")

func escape(s string) string {
	if !strings.ContainsAny(s, "%/") {
		return s
	}
	return escaper.Replace(s)
}
