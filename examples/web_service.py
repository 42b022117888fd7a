"""Embed elqproj in a small web service: load the models once, serve many requests.

    python examples/web_service.py --projector ./my-projector --port 8000
    curl --data-binary @photo.jpg "http://127.0.0.1:8000/restore?lfo=2&seed=0" -o restored.png

Standard library only (http.server); the same pattern fits FastAPI/Flask: build one RestorationPipeline
at start-up, call it per request. The engine's lock makes concurrent requests on the shared SD base
safe; they run one at a time on the GPU.
"""

from __future__ import annotations

import argparse
import io
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from PIL import Image

from elqproj import ElqprojError, Projector

MAX_BODY = 50 * 1024 * 1024


class RestorationService:
    """Holds the loaded models; :meth:`restore_bytes` turns uploaded image bytes into PNG bytes."""

    def __init__(self, projector: Projector, backend: str = "osediff", *, prompt: str | None = None,
                 process_size: int = 512, **backend_options) -> None:
        self.pipeline = projector.pipeline(backend, backend_options=backend_options)
        self.prompt = prompt
        self.process_size = process_size

    def restore_bytes(self, data: bytes, *, lfo: int = 0, seed: int | None = None) -> bytes:
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as exc:  # PIL raises many types for bad uploads
            raise ElqprojError(f"The upload is not a readable image: {exc}") from exc
        result = self.pipeline(image, prompt=self.prompt, lfo=lfo, seed=seed, process_size=self.process_size,
                               progress=False)
        buffer = io.BytesIO()
        result.image.save(buffer, format="PNG")
        return buffer.getvalue()


def make_handler(service: RestorationService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            url = urlparse(self.path)
            if url.path != "/restore":
                return self._send(404, b'{"error": "POST /restore"}', "application/json")
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                return self._send(413, b'{"error": "body must be 1 byte to 50 MB"}', "application/json")
            query = parse_qs(url.query)
            try:
                lfo = int(query.get("lfo", ["0"])[0])
                seed = int(query["seed"][0]) if "seed" in query else None
                png = service.restore_bytes(self.rfile.read(length), lfo=lfo, seed=seed)
            except (ElqprojError, ValueError) as exc:
                return self._send(400, json.dumps({"error": str(exc)}).encode(), "application/json")
            self._send(200, png, "image/png")

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler


def make_server(service: RestorationService, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    return ThreadingHTTPServer((host, port), make_handler(service))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projector", required=True)
    parser.add_argument("--backend", default="osediff")
    parser.add_argument("--backend-weights", default=None)
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--prompt", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    projector = Projector.from_pretrained(args.projector, device=args.device, dtype=args.dtype,
                                          base_model=args.base_model)
    extra = {"weights": args.backend_weights} if args.backend_weights else {}
    server = make_server(RestorationService(projector, args.backend, prompt=args.prompt, **extra), args.host, args.port)
    print(f"serving on http://{args.host}:{server.server_address[1]}/restore")
    server.serve_forever()


if __name__ == "__main__":
    main()
