package metrics

// Multi returns a Recorder that reports everything to each of rs (nil ones skipped), and claims an
// identity on each of them that is a Claimer: the claim fails when any of them refuses it.
func Multi(rs ...Recorder) Recorder {
	var m multi
	for _, r := range rs {
		if r != nil {
			m = append(m, r)
		}
	}
	return m
}

type multi []Recorder

func (m multi) Add(name string, delta float64, labels ...Label) {
	for _, r := range m {
		r.Add(name, delta, labels...)
	}
}

func (m multi) Set(name string, value float64, labels ...Label) {
	for _, r := range m {
		r.Set(name, value, labels...)
	}
}

func (m multi) Observe(name string, value float64, labels ...Label) {
	for _, r := range m {
		r.Observe(name, value, labels...)
	}
}

func (m multi) Claim(labels ...Label) (func(), error) {
	var releases []func()
	releaseAll := func() {
		for _, rel := range releases {
			rel()
		}
	}
	for _, r := range m {
		rel, err := Claim(r, labels...)
		if err != nil {
			releaseAll()
			return nil, err
		}
		releases = append(releases, rel)
	}
	return releaseAll, nil
}
