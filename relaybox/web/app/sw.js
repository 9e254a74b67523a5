// The relaybox app shell offline (docs/client-js.md "Install on a phone"): network first,
// so an upgraded server's files are used at once; the cached copy when the network fails.
// Only the shell's files are handled; the API and the gateway never pass through here.

const CACHE = "relaybox-shell-v1";
const SHELL = [
  "./", "index.html", "app.js", "app.css", "manifest.webmanifest", "icon.svg",
  "icon-192.png", "icon-512.png", "../sdk/relaybox.js", "../vendor/qrcode-generator/qrcode.mjs",
];
const SHELL_URLS = new Set(SHELL.map((p) => new URL(p, self.location).href));

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const req = event.request;
  const url = new URL(req.url);
  url.hash = "";
  if (req.method !== "GET" || !SHELL_URLS.has(url.href)) return;
  event.respondWith(fetch(req).then((resp) => {
    if (resp.ok) {
      const copy = resp.clone();
      caches.open(CACHE).then((c) => c.put(req, copy));
    }
    return resp;
  }).catch(() => caches.match(req, { ignoreSearch: true })));
});
