import { defineConfig } from 'vite';

// `npm run build` writes dist/, which the Go package in this directory
// embeds. `npm run dev` serves the sources and forwards the API, metrics and
// the WebSocket endpoint to a Warbler on :8080 (whose Origin check then sees
// the dev server's origin: add it to mqtt.allowed_origins for development).
export default defineConfig({
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: false,
    target: 'es2022',
    chunkSizeWarningLimit: 800,
  },
  server: {
    proxy: {
      '/v1': 'http://127.0.0.1:8080',
      '/metrics': 'http://127.0.0.1:8080',
      '/mqtt': { target: 'ws://127.0.0.1:8080', ws: true },
    },
  },
});
