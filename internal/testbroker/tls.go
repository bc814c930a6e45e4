package testbroker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// NodeOption changes how StartNode sets up a private node.
type NodeOption func(*nodeOptions)

type nodeOptions struct {
	tls     bool
	erlArgs string
}

// NoBusyWait are Erlang VM flags that stop the schedulers from busy-waiting when idle (they spin by
// default): pass them with WithErlArgs when several nodes share few cores.
const NoBusyWait = "+sbwt none +sbwtdcpu none +sbwtdio none"

// WithErlArgs passes extra flags to the node's Erlang VM (RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS), e.g.
// NoBusyWait.
func WithErlArgs(args string) NodeOption { return func(o *nodeOptions) { o.erlArgs = args } }

// WithTLS gives the node a TLS listener (Node.TLS) that requires a client certificate signed by a
// test CA made for this node alone, and certificate login (SASL EXTERNAL, the certificate's CN
// "guest" is the user) besides passwords; the plain listener stays.
func WithTLS() NodeOption { return func(o *nodeOptions) { o.tls = true } }

// TLS is a private node's TLS listener and a client side that trusts it.
type TLS struct {
	URL  string // amqps://guest:guest@127.0.0.1:<Port>/
	Addr string // 127.0.0.1:<Port>
	Port int
	// Client trusts the node's CA and presents a client certificate signed by it. Clone it
	// before changing it.
	Client *tls.Config
	// PEM files of the same, for the URL parameters cacertfile, certfile and keyfile.
	CAFile, CertFile, KeyFile string
	// OtherCA is a pool holding only a CA that signed nothing the node presents: a client that
	// trusts it must fail verification.
	OtherCA *x509.CertPool
}

// setUpTLS makes a CA, a server certificate for 127.0.0.1 and localhost, and a client certificate
// under dir/tls, and writes dir/rabbitmq.conf with the TLS listener. RabbitMQ reads rabbitmq.conf
// through RABBITMQ_CONFIG_FILE (see env).
func setUpTLS(t testing.TB, dir string) *TLS {
	t.Helper()
	tdir := filepath.Join(dir, "tls")
	if err := os.MkdirAll(tdir, 0o755); err != nil {
		t.Fatalf("testbroker: %v", err)
	}
	ca, caKey := newCA(t, "rabbitkit test CA")
	other, _ := newCA(t, "rabbitkit unrelated CA")
	srv, srvKey := newLeaf(t, ca, caKey, "rabbitkit test broker", x509.ExtKeyUsageServerAuth)
	cli, cliKey := newLeaf(t, ca, caKey, "guest", x509.ExtKeyUsageClientAuth)
	write := func(name string, blocks ...*pem.Block) string {
		p := filepath.Join(tdir, name)
		var b []byte
		for _, bl := range blocks {
			b = append(b, pem.EncodeToMemory(bl)...)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil { // test keys: readable by the rabbitmq user
			t.Fatalf("testbroker: %v", err)
		}
		return p
	}
	certBlock := func(c *x509.Certificate) *pem.Block { return &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw} }
	keyBlock := func(k *ecdsa.PrivateKey) *pem.Block {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatalf("testbroker: %v", err)
		}
		return &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	}
	info := &TLS{Port: freePort(t)}
	info.Addr = "127.0.0.1:" + strconv.Itoa(info.Port)
	info.URL = "amqps://guest:guest@" + info.Addr + "/"
	info.CAFile = write("ca.pem", certBlock(ca))
	info.CertFile = write("client.pem", certBlock(cli))
	info.KeyFile = write("client.key", keyBlock(cliKey))
	srvCert := write("server.pem", certBlock(srv))
	srvKeyFile := write("server.key", keyBlock(srvKey))

	roots := x509.NewCertPool()
	roots.AddCert(ca)
	info.OtherCA = x509.NewCertPool()
	info.OtherCA.AddCert(other)
	pair, err := tls.LoadX509KeyPair(info.CertFile, info.KeyFile)
	if err != nil {
		t.Fatalf("testbroker: %v", err)
	}
	info.Client = &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}

	conf := fmt.Sprintf(`listeners.ssl.default = %s
ssl_options.cacertfile = %s
ssl_options.certfile = %s
ssl_options.keyfile = %s
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = common_name
`, info.Addr, info.CAFile, srvCert, srvKeyFile)
	if err := os.WriteFile(filepath.Join(dir, "rabbitmq.conf"), []byte(conf), 0o644); err != nil {
		t.Fatalf("testbroker: %v", err)
	}
	// Certificate login (SASL EXTERNAL): the client certificate's CN, "guest", is the user.
	if err := os.WriteFile(filepath.Join(dir, "enabled_plugins"), []byte("[rabbitmq_auth_mechanism_ssl].\n"), 0o644); err != nil {
		t.Fatalf("testbroker: %v", err)
	}
	return info
}

func newCA(t testing.TB, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	tmpl := certTemplate(name)
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	return sign(t, tmpl, nil, nil)
}

func newLeaf(t testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, usage x509.ExtKeyUsage) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	tmpl := certTemplate(cn)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	return sign(t, tmpl, ca, caKey)
}

func certTemplate(cn string) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"rabbitkit tests"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
}

// sign self-signs tmpl when parent is nil.
func sign(t testing.TB, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testbroker: %v", err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatalf("testbroker: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testbroker: %v", err)
	}
	return c, key
}
