// Package deploy holds no Go code: it is the home of the files operators load (Prometheus alert
// rules in prometheus/, a Grafana dashboard in grafana/) and of the test that checks them with
// promtool (scripts/ensure-promtool.sh installs it; make test runs it first).
package deploy
