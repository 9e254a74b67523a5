// Starts Swagger UI from the vendored bundle (relaybox/web/vendor/README.md); no CDN,
// no validator badge, no top bar. The document is /docs/openapi.json (docs/api.md).
(function () {
  "use strict";
  var here = document.currentScript.src;
  window.ui = SwaggerUIBundle({
    url: new URL("openapi.json", here).href,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    tryItOutEnabled: false,
  });
})();
