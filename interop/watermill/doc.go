// Package watermill holds only a test: that a plain subscriber on another Go library,
// github.com/ThreeDotsLabs/watermill-amqp with its default durable queue config and its default
// marshaler, receives the messages of a rabbitkit publisher unchanged (contract v2,
// docs/PROTOCOL.md section 1), and that the legacy contract v1 stamp is what it refused.
//
// It is a module of its own so that watermill never becomes a dependency of rabbitkit. It needs a
// RabbitMQ broker: $RABBITKIT_AMQP_URL, or amqp://guest:guest@127.0.0.1:5672/.
//
//	cd interop/watermill && go test -race -count=1 -v ./...
package watermill
