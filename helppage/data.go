package helppage

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Data is what a page template is executed with: the Site, and what the
// page shows made of it. An operator's own template may use any of it.
type Data struct {
	Site
	// BaseURL is the host's address: https://docker.example.com.
	BaseURL string
	// Nonce is the nonce of this response's Content-Security-Policy:
	// the page's <style> and <script> need nonce="{{.Nonce}}" to apply.
	Nonce string
	// Insecure says that the browser came over plain HTTP: clients must
	// be told to use the host without TLS.
	Insecure bool
	// Entries are the registries, as the page lists them.
	Entries []Entry
	// DockerMirror is the address for Docker's registry-mirrors: a host
	// that serves Docker Hub at its root. Empty without one.
	DockerMirror string
	// DaemonJSON is /etc/docker/daemon.json with DockerMirror.
	DaemonJSON string
	// HostsTOML are containerd's hosts.toml files, one per registry with
	// a public name.
	HostsTOML []File
	// RegistriesConf is the part of podman's (and buildah's, skopeo's,
	// CRI-O's) registries.conf that makes this proxy a mirror.
	RegistriesConf string
	// K3sRegistries is k3s's (and RKE2's) registries.yaml.
	K3sRegistries string
	// Hosts are the proxy's host names on the page: the one to log in
	// to, and to keep a client certificate for.
	Hosts []string
	// ClientCertDirs are the directories where Docker and podman look
	// for a client certificate and key for each of Hosts (with
	// ClientCertificate).
	ClientCertDirs []string
}

// Entry is one registry as the page lists it.
type Entry struct {
	// Name is the registry's public name, or empty (see Registry.Name).
	Name string
	// Address is where to pull its images through the proxy: a host name
	// of the proxy (docker.example.com), or this host with the registry's
	// name as the first path component (docker.example.com/ghcr.io).
	Address string
	// OtherHosts are further host names of the proxy that serve it.
	OtherHosts []string
	// PathAddress is this host with the registry's name as the first
	// path component, which works for every registry with a name.
	PathAddress string
	// Pull is a docker pull command line through Address.
	Pull string
	// PublicURL is the registry's own public address (Registry.PublicURL).
	PublicURL string
}

// File is a configuration file: its path and its content.
type File struct {
	Path, Content string
}

// exampleRepositories are images to show in a pull line, for registries
// that have a well-known one.
var exampleRepositories = map[string]string{
	"docker.io":       "library/alpine:latest",
	"registry.k8s.io": "pause:3.10",
}

func newData(site Site, nonce string) Data {
	d := Data{
		Site:     site,
		BaseURL:  site.Scheme + "://" + site.Host,
		Nonce:    nonce,
		Insecure: site.Scheme != "https",
	}
	hosts := map[string]bool{site.Host: true}
	d.Hosts = append(d.Hosts, site.Host)
	for _, reg := range site.Registries {
		e := Entry{Name: reg.Name, PublicURL: reg.PublicURL}
		if reg.Name != "" {
			e.PathAddress = site.Host + "/" + reg.Name
		}
		switch {
		case len(reg.Hosts) > 0:
			e.Address, e.OtherHosts = reg.Hosts[0], reg.Hosts[1:]
		case reg.Name != "":
			e.Address = e.PathAddress
		default:
			continue // neither a host name nor a name: no way to it to show
		}
		repo := exampleRepositories[reg.Name]
		if repo == "" {
			repo = "<repository>:<tag>"
		}
		e.Pull = "docker pull " + e.Address + "/" + repo
		d.Entries = append(d.Entries, e)
		for _, h := range reg.Hosts {
			if !hosts[h] {
				hosts[h] = true
				d.Hosts = append(d.Hosts, h)
			}
		}
		if reg.Name == "docker.io" && len(reg.Hosts) > 0 && d.DockerMirror == "" {
			d.DockerMirror = site.Scheme + "://" + reg.Hosts[0]
		}
	}
	d.DaemonJSON = daemonJSON(d)
	d.HostsTOML = hostsTOML(d)
	d.RegistriesConf = registriesConf(d)
	d.K3sRegistries = k3sRegistries(d)
	if site.ClientCertificate {
		for _, h := range d.Hosts {
			d.ClientCertDirs = append(d.ClientCertDirs, "/etc/docker/certs.d/"+h+"/", "/etc/containers/certs.d/"+h+"/")
		}
	}
	return d
}

// quote is s as a JSON string, which is also a TOML basic string and a
// YAML double-quoted string for the names a page shows.
func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// mirrorHost is the proxy host that a mirror configuration names for e:
// its own host name, or this one (containerd and k3s add ?ns=<registry>
// to every request, which picks the registry on any host of the proxy).
func mirrorHost(d Data, e Entry) string {
	if e.Address != e.PathAddress {
		return e.Address
	}
	return d.Host
}

func daemonJSON(d Data) string {
	if d.DockerMirror == "" {
		return ""
	}
	var b strings.Builder
	b.WriteString("{\n")
	if d.Insecure {
		fmt.Fprintf(&b, "  \"insecure-registries\": [%s],\n", quote(strings.TrimPrefix(d.DockerMirror, d.Scheme+"://")))
	}
	fmt.Fprintf(&b, "  \"registry-mirrors\": [%s]\n}\n", quote(d.DockerMirror))
	return b.String()
}

func hostsTOML(d Data) []File {
	var files []File
	for _, e := range d.Entries {
		if e.Name == "" || e.PublicURL == "" {
			continue
		}
		dir := "/etc/containerd/certs.d/" + e.Name
		var b strings.Builder
		fmt.Fprintf(&b, "server = %s\n\n[host.%s]\n  capabilities = [\"pull\", \"resolve\"]\n",
			quote(e.PublicURL), quote(d.Scheme+"://"+mirrorHost(d, e)))
		if d.ClientCertificate {
			fmt.Fprintf(&b, "  client = [[%s, %s]]\n", quote(dir+"/client.cert"), quote(dir+"/client.key"))
		}
		files = append(files, File{Path: dir + "/hosts.toml", Content: b.String()})
	}
	return files
}

func registriesConf(d Data) string {
	var b strings.Builder
	for _, e := range d.Entries {
		if e.Name == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteString("\n")
		}
		// podman takes a mirror with a path: the registry's name as the
		// first path component, where the proxy has no host name for it.
		fmt.Fprintf(&b, "[[registry]]\nprefix = %s\nlocation = %s\n\n[[registry.mirror]]\nlocation = %s\n",
			quote(e.Name), quote(e.Name), quote(e.Address))
		if d.Insecure {
			b.WriteString("insecure = true\n")
		}
	}
	return b.String()
}

func k3sRegistries(d Data) string {
	var b strings.Builder
	for _, e := range d.Entries {
		if e.Name == "" {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("mirrors:\n")
		}
		fmt.Fprintf(&b, "  %s:\n    endpoint:\n      - %s\n", quote(e.Name), quote(d.Scheme+"://"+mirrorHost(d, e)))
	}
	if b.Len() > 0 && d.ClientCertificate {
		b.WriteString("configs:\n")
		for _, h := range d.Hosts {
			fmt.Fprintf(&b, "  %s:\n    tls:\n      cert_file: /etc/rancher/k3s/client.cert\n      key_file: /etc/rancher/k3s/client.key\n", quote(h))
		}
	}
	return b.String()
}
