package kms

import (
	"context"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kms-plugin/kms-plugin/providers"
)

func TestParseEndpoint(t *testing.T) {
	cases := []struct {
		in, addr string
		abstract bool
		ok       bool
	}{
		{"unix:///var/run/kms-plugin/kms.sock", "/var/run/kms-plugin/kms.sock", false, true},
		{"unix:///tmp/../tmp/k.sock", "/tmp/k.sock", false, true},
		{"unix:///@kms-plugin", "@kms-plugin", true, true},
		{"unix:///", "", false, false},
		{"unix:///@", "", false, false},
		{"unix://relative.sock", "", false, false},
		{"unix:///dir/", "", false, false},
		{"tcp://127.0.0.1:80", "", false, false},
		{"/var/run/kms.sock", "", false, false},
		{"", "", false, false},
		{"unix:///" + strings.Repeat("d", 107), "/" + strings.Repeat("d", 107), false, false},
		{"unix:///" + strings.Repeat("d", 106), "/" + strings.Repeat("d", 106), false, true},
		{"unix:///@" + strings.Repeat("a", 108), "", true, false},
	}
	for _, c := range cases {
		ep, err := ParseEndpoint(c.in)
		if (err == nil) != c.ok {
			t.Errorf("ParseEndpoint(%q) error = %v, want ok=%v", c.in, err, c.ok)
			continue
		}
		if c.ok && (ep.Address != c.addr || ep.Abstract() != c.abstract) {
			t.Errorf("ParseEndpoint(%q) = %+v (abstract %v), want %q (abstract %v)", c.in, ep, ep.Abstract(), c.addr, c.abstract)
		}
		if c.ok && ep.String() != strings.Replace(c.in, "/tmp/../tmp/", "/tmp/", 1) {
			t.Errorf("ParseEndpoint(%q).String() = %q", c.in, ep.String())
		}
	}
}

func TestWideModeWarning(t *testing.T) {
	for mode, warn := range map[fs.FileMode]bool{0o600: false, 0o660: false, 0o666: true, 0o606: true, 0o620: true, 0o640: true} {
		if got := WideModeWarning(mode) != ""; got != warn {
			t.Errorf("WideModeWarning(%#o) = %q, want a warning: %v", mode, WideModeWarning(mode), warn)
		}
	}
}

func TestHTTPHandler(t *testing.T) {
	cases := []struct {
		name                   string
		check, warning         error
		livez, readyz, healthz int
	}{
		{"healthy", nil, nil, 200, 200, 200},
		{"degraded", nil, errors.New("keyring reload failed"), 200, 200, 503},
		{"unavailable", providers.ErrUnavailable, nil, 200, 503, 503},
	}
	for _, c := range cases {
		f := okFake()
		f.check = func(context.Context) error { return c.check }
		h := NewHealth(warnFake{f, c.warning}, 0, time.Second, nil, nil)
		h.ProbeNow(context.Background())
		handler := HTTPHandler(h, prometheus.NewRegistry())
		for path, want := range map[string]int{"/livez": c.livez, "/readyz": c.readyz, "/healthz": c.healthz} {
			rec := httptest.NewRecorder()
			handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
			if rec.Code != want {
				t.Errorf("%s: GET %s = %d %q, want %d", c.name, path, rec.Code, rec.Body.String(), want)
			}
		}
	}
}

type warnFake struct {
	*fakeProvider
	warning error
}

func (w warnFake) Warning() error { return w.warning }
