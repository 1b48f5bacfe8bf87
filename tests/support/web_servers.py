"""Tiny map servers on 127.0.0.1 (Python's http.server) for the web-layer tests (issue 17): XYZ PNG tiles
and a one-layer WMS 1.3.0, both cut from a scene held in memory, so that a web layer can be compared
with the same pixels read from a GeoTIFF."""

from __future__ import annotations

import http.server
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from xml.sax.saxutils import escape

import numpy as np
from osgeo import gdal, osr

# a request path with its query → (status, content type, body)
Answer = Callable[[str], tuple[int, str, bytes]]


def png(pixels: np.ndarray) -> bytes:
    """(bands, rows, cols) uint8 as a PNG file's bytes (written by GDAL in /vsimem)."""
    bands, rows, cols = pixels.shape
    mem = gdal.GetDriverByName("MEM").Create("", cols, rows, bands, gdal.GDT_Byte)
    for b in range(bands):
        mem.GetRasterBand(b + 1).WriteArray(pixels[b])
    name = f"/vsimem/geoseg-test-{threading.get_ident()}.png"
    gdal.GetDriverByName("PNG").CreateCopy(name, mem)
    f = gdal.VSIFOpenL(name, "rb")
    gdal.VSIFSeekL(f, 0, 2)
    size = gdal.VSIFTellL(f)
    gdal.VSIFSeekL(f, 0, 0)
    data = gdal.VSIFReadL(1, size, f)
    gdal.VSIFCloseL(f)
    gdal.Unlink(name)
    return bytes(data)


@contextmanager
def serve(answer: Answer) -> Iterator[str]:
    """A threading HTTP server on 127.0.0.1 answering GET with `answer`; yields its base URL and stops
    (joined) afterwards."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                status, kind, body = answer(self.path)
            except Exception as e:  # noqa: BLE001  (a test server answers 500, never dies)
                status, kind, body = 500, "text/plain", str(e).encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def xyz_tiles(tiles: dict[str, bytes]) -> Answer:
    """PNG tiles by path ('/z/x/y.png'); 404 elsewhere."""

    def answer(path: str) -> tuple[int, str, bytes]:
        body = tiles.get(path.split("?")[0])
        return (200, "image/png", body) if body else (404, "image/png", b"")

    return answer


class WmsScene:
    """A WMS 1.3.0 server's answers for one layer, `name`, showing `scene` ((bands, rows, cols) uint8)
    whose top-left pixel corner is at (x0, y0) with square pixels of `pixel` map units in `crs`
    (an EPSG authid of a projected CRS: x east, y north, so BBOX is xmin,ymin,xmax,ymax).

    GetMap samples the scene at the centre of each requested pixel (nearest neighbour), so a request
    on the scene's own grid returns its pixels exactly; outside the scene it is black. `requests`
    records every GetMap's (BBOX, WIDTH, HEIGHT)."""

    def __init__(self, scene: np.ndarray, x0: float, y0: float, pixel: float, crs: str, name: str = "scene") -> None:
        self.scene, self.x0, self.y0, self.pixel, self.crs, self.name = scene, x0, y0, pixel, crs, name
        self.requests: list[tuple[tuple[float, ...], int, int]] = []
        self.on_getmap: Callable[[], None] | None = None  # called before each GetMap is answered (tests cancel)

    def __call__(self, path: str) -> tuple[int, str, bytes]:
        query = {k.upper(): v for k, v in urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query)}
        request = query.get("REQUEST", "").lower()
        if request == "getcapabilities":
            return 200, "text/xml", self.capabilities(path.split("?")[0]).encode()
        if request == "getmap":
            bbox = tuple(float(v) for v in query["BBOX"].split(","))
            width, height = int(query["WIDTH"]), int(query["HEIGHT"])
            self.requests.append((bbox, width, height))
            if self.on_getmap is not None:
                self.on_getmap()
            return 200, "image/png", png(self.crop(bbox, width, height))
        return 400, "text/plain", b"unsupported request"

    def bounds(self) -> tuple[float, float, float, float]:
        rows, cols = self.scene.shape[1:]
        return self.x0, self.y0 - rows * self.pixel, self.x0 + cols * self.pixel, self.y0

    def crop(self, bbox: tuple[float, ...], width: int, height: int) -> np.ndarray:
        xmin, ymin, xmax, ymax = bbox
        x = xmin + (np.arange(width) + 0.5) * (xmax - xmin) / width
        y = ymax - (np.arange(height) + 0.5) * (ymax - ymin) / height
        cols = np.floor((x - self.x0) / self.pixel).astype(int)
        rows = np.floor((self.y0 - y) / self.pixel).astype(int)
        inside_c = (cols >= 0) & (cols < self.scene.shape[2])
        inside_r = (rows >= 0) & (rows < self.scene.shape[1])
        out = self.scene[:, np.clip(rows, 0, self.scene.shape[1] - 1)][:, :, np.clip(cols, 0, self.scene.shape[2] - 1)]
        out[:, ~inside_r, :] = 0
        out[:, :, ~inside_c] = 0
        return np.ascontiguousarray(out)

    def capabilities(self, url_path: str) -> str:
        xmin, ymin, xmax, ymax = self.bounds()
        online = escape(url_path)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<WMS_Capabilities version="1.3.0" xmlns="http://www.opengis.net/wms" '
            'xmlns:xlink="http://www.w3.org/1999/xlink">'
            "<Service><Name>WMS</Name><Title>GeoSeg test</Title>"
            f'<OnlineResource xlink:type="simple" xlink:href="{online}"/></Service>'
            "<Capability><Request>"
            "<GetCapabilities><Format>text/xml</Format><DCPType><HTTP><Get>"
            f'<OnlineResource xlink:type="simple" xlink:href="{online}?"/></Get></HTTP></DCPType></GetCapabilities>'
            "<GetMap><Format>image/png</Format><DCPType><HTTP><Get>"
            f'<OnlineResource xlink:type="simple" xlink:href="{online}?"/></Get></HTTP></DCPType></GetMap>'
            "</Request><Exception><Format>XML</Format></Exception>"
            f'<Layer queryable="0"><Name>{escape(self.name)}</Name><Title>{escape(self.name)}</Title>'
            f"<CRS>{escape(self.crs)}</CRS>{self._geographic_box()}"
            f'<BoundingBox CRS="{escape(self.crs)}" minx="{xmin!r}" miny="{ymin!r}" maxx="{xmax!r}" maxy="{ymax!r}"/>'
            "</Layer></Capability></WMS_Capabilities>"
        )

    def _geographic_box(self) -> str:
        """EX_GeographicBoundingBox (WMS 1.3.0 requires it): the scene's corners in WGS 84."""
        xmin, ymin, xmax, ymax = self.bounds()
        src, dst = osr.SpatialReference(), osr.SpatialReference()
        src.SetFromUserInput(self.crs)
        dst.ImportFromEPSG(4326)
        for s in (src, dst):
            s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        t = osr.CoordinateTransformation(src, dst)
        corners = [t.TransformPoint(x, y)[:2] for x in (xmin, xmax) for y in (ymin, ymax)]
        lons, lats = [c[0] for c in corners], [c[1] for c in corners]
        return (
            f"<EX_GeographicBoundingBox><westBoundLongitude>{min(lons)!r}</westBoundLongitude>"
            f"<eastBoundLongitude>{max(lons)!r}</eastBoundLongitude><southBoundLatitude>{min(lats)!r}"
            f"</southBoundLatitude><northBoundLatitude>{max(lats)!r}</northBoundLatitude></EX_GeographicBoundingBox>"
        )

    def layer_uri(self, url: str) -> str:
        """QGIS's wms provider URI of the layer (PNG, the scene's CRS)."""
        return f"crs={self.crs}&format=image/png&layers={self.name}&styles=&url={url}/wms"
