package testbroker

import "go.uber.org/goleak"

// IgnoreProxyLeaks are the goleak options every package that uses NewProxy needs: toxiproxy v2.12.0
// leaves its link goroutines blocked after Proxy.Stop when a toxic ate bytes under live traffic.
// They belong to the proxy, not to the code under test.
func IgnoreProxyLeaks() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/Shopify/toxiproxy/v2/toxics.(*NoopToxic).Pipe"),
		goleak.IgnoreTopFunction("github.com/Shopify/toxiproxy/v2/stream.(*ChanWriter).Write"),
		goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2/toxics.(*ToxicStub).Run"),
		goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2.(*ToxicLink).read"),
	}
}
