"""Synthetic sample scene: a seeded multispectral GeoTIFF, its label polygons and its truth map.

Tests, benchmarks and the demo need imagery that behaves like a real scene without shipping
data, so ``make_sample_scene`` builds one from a seed alone, in three steps:

1. Class map. Smooth random fields (white noise low-passed by a Gaussian in the Fourier
   domain) lay out the landscape: wobbly rectangular field parcels of grassland or cropland
   split by one-pixel tracks, forest patches where one field is high, a built-up district of
   blocks and streets where another is high, a meandering river, a lake and straight roads.
   Tracks, streets and roads are class 0 (unlabelled), as in real, incomplete labelling.
2. Pixels. Every material has a mean reflectance signature (blue, green, red, NIR, then red
   edge, SWIR1, SWIR2 for extra bands) chosen so that classes overlap: grassland, green crops
   and forest differ mainly in NIR and red, bare soil looks like roofs, dark roofs like water.
   Per-class texture (forest crowns and shadows, crop rows, roof-by-roof materials and
   gardens, nearly flat water with sediment), a soft illumination gradient, a slight optical
   blur and per-pixel sensor noise follow; values are reflectance x 10000, never 0 if valid.
3. Labels. The class map is polygonized (4-connected), reprojected (EPSG:4326 by default)
   and written to a GeoPackage; ``label_fraction < 1`` keeps a seeded random subset of the
   polygons (at least one per class), mimicking incomplete labels.

An irregular nodata hole (0 in every band) stands in for a cloud mask or a mosaic gap. The
class map itself is written as ``sample_truth.tif`` (255 in the hole) as the reference.

Run ``python -m geoseg.core.sample OUT_DIR [--seed N] [--width W] [--height H]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np
from osgeo import gdal, ogr, osr

from .gdalx import with_gdal_exceptions

CLASSES = {1: "water", 2: "forest", 3: "grassland", 4: "built-up", 5: "cropland"}
TRUTH_NODATA = 255
ORIGIN = (500000.0, 5300000.0)  # upper-left corner, in UTM metres
BASE_BANDS = ("blue", "green", "red", "nir", "red_edge", "swir1", "swir2")
# Mean reflectance x 10000 per material, in BASE_BANDS order.
SIG = {
    k: np.array(v, np.float32)
    for k, v in dict(
        water=[700, 600, 400, 200, 300, 100, 80],
        forest=[300, 500, 300, 3000, 1200, 1500, 700],
        grass=[420, 700, 500, 3300, 1500, 2200, 1200],
        crop=[380, 720, 420, 3800, 1600, 2100, 1000],
        soil=[900, 1100, 1400, 2100, 1700, 2800, 2400],
        roof_grey=[1200, 1250, 1300, 1700, 1500, 2000, 1900],
        roof_red=[700, 800, 1600, 1900, 1800, 2400, 2100],
        roof_dark=[400, 420, 450, 600, 500, 700, 650],
        asphalt=[600, 650, 700, 900, 800, 1100, 1000],
    ).items()
}
FILES = ("sample_scene.tif", "sample_labels.gpkg", "sample_truth.tif")


@dataclass(frozen=True)
class SampleScene:
    """Where a generated scene lives and how its labels are keyed."""

    raster: str
    labels: str
    class_field: str
    name_field: str
    classes: dict[int, str]

    @property
    def truth(self) -> str:
        """The class map the labels were cut from (255 in the nodata hole): the reference."""
        return os.path.join(os.path.dirname(self.raster), FILES[2])


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of the last two axes via FFT (periodic edges), since scipy is not available."""
    fy = np.fft.fftfreq(a.shape[-2], d=1.0)[:, None]  # d given: numpy 1.24's stubs lack its default
    fx = np.fft.rfftfreq(a.shape[-1], d=1.0)[None, :]
    kernel = np.exp(-2.0 * np.pi**2 * sigma**2 * (fx**2 + fy**2))
    return np.fft.irfft2(np.fft.rfft2(a) * kernel, s=a.shape[-2:])


def _srs(epsg: int) -> osr.SpatialReference:
    """EPSG SRS in x/y (lon/lat) order, so coordinates never swap between GDAL versions."""
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Standardised smooth random field: the building block of every random shape here."""
    f = blur(rng.standard_normal(shape), sigma)
    return (f - f.mean()) / (f.std() + 1e-12)


def _layout(rng: np.random.Generator, h: int, w: int) -> dict[str, np.ndarray]:
    """Class map plus the per-pixel ids (parcel, building, road) that drive the texture."""
    s = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # Field parcels: random cuts on wobbled coordinates, so edges are not ruler-straight.
    xw = xx + 0.02 * s * smooth(rng, (h, w), 0.15 * s)
    yw = yy + 0.02 * s * smooth(rng, (h, w), 0.15 * s)
    xcuts = np.cumsum(rng.uniform(0.1, 0.25, int(w / (0.1 * s)) + 2) * s)
    ycuts = np.cumsum(rng.uniform(0.1, 0.25, int(h / (0.1 * s)) + 2) * s)
    parcel = np.digitize(yw, ycuts) * (len(xcuts) + 1) + np.digitize(xw, xcuts)
    track = np.zeros((h, w), bool)
    track[:, 1:] |= parcel[:, 1:] != parcel[:, :-1]
    track[1:, :] |= parcel[1:, :] != parcel[:-1, :]
    is_crop = rng.random(parcel.max() + 1) < 0.5
    cm = np.where(is_crop[parcel], 5, 3).astype(np.uint8)
    cm[track] = 0
    forest = smooth(rng, (h, w), 0.05 * s)
    cm[forest > np.quantile(forest, 0.75)] = 2
    # Built-up district: a grid of blocks and 2-pixel streets inside a smooth zone.
    zone = smooth(rng, (h, w), 0.12 * s)
    zone = zone > np.quantile(zone, 0.86)
    period = max(8, round(0.06 * s))
    ox, oy = rng.integers(0, period, 2)
    street = ((xx - ox) % period < 2) | ((yy - oy) % period < 2)
    bx = ((xx - ox + period) // (period / 2)).astype(np.int64)  # two buildings per block side
    building = ((yy - oy + period) // (period / 2)).astype(np.int64) * (bx.max() + 1) + bx
    cm[zone] = np.where(street[zone], 0, 4)
    # River: a meander across the scene, in a random orientation; then a lake.
    along, across = (yy, xx) if rng.random() < 0.5 else (xx, yy)
    n_along, n_across = (h, w) if along is yy else (w, h)
    phase = 2 * np.pi * np.arange(n_along) / (n_along * rng.uniform(0.7, 1.4)) + rng.uniform(0, 6)
    centre = n_across * (
        rng.uniform(0.25, 0.75) + 0.12 * np.sin(phase) + 0.04 * smooth(rng, (1, n_along), 0.1 * n_along)[0]
    )
    half_width = np.maximum(2.5, 0.025 * s * (1 + 0.3 * smooth(rng, (1, n_along), 0.1 * n_along)[0]))
    idx = along.astype(np.int64)
    cm[np.abs(across - centre[idx]) < half_width[idx]] = 1
    cy, cx, r = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w, 0.08 * s
    cm[np.hypot(yy - cy, xx - cx) / r + 0.3 * smooth(rng, (h, w), 0.05 * s) < 1] = 1
    # Straight roads (bridges over the water included), unlabelled like the streets.
    road = np.zeros((h, w), bool)
    for _ in range(2):
        theta, px, py = rng.uniform(0, np.pi), rng.uniform(0, w), rng.uniform(0, h)
        road |= np.abs((xx - px) * np.sin(theta) - (yy - py) * np.cos(theta)) < 1.2
    cm[road] = 0
    road |= zone & street
    # Nodata hole: an irregular blob off-centre and away from the edges.
    hy = rng.choice([rng.uniform(0.2, 0.35), rng.uniform(0.65, 0.8)]) * h
    hx = rng.choice([rng.uniform(0.2, 0.35), rng.uniform(0.65, 0.8)]) * w
    hole = np.hypot(yy - hy, xx - hx) / (0.12 * s) + 0.35 * smooth(rng, (h, w), 0.04 * s) < 1
    return {"cm": cm, "parcel": parcel, "building": building, "road": road, "hole": hole, "xx": xx, "yy": yy}


def _pixels(rng: np.random.Generator, lay: dict[str, np.ndarray], bands: int, hole: bool) -> np.ndarray:
    """Per-material signatures, texture, illumination, blur and noise → UInt16 (bands, h, w)."""
    cm, parcel, xx, yy = lay["cm"], lay["parcel"], lay["xx"], lay["yy"]
    h, w = cm.shape
    s = min(h, w)
    spec = np.empty((7, h, w), np.float32)
    spec[:] = (0.5 * (SIG["grass"] + SIG["soil"]))[:, None, None]  # tracks
    n = parcel.max() + 1
    green = rng.uniform(0, 1, n)[parcel]  # crop cover per parcel: bare soil .. full canopy
    theta = rng.uniform(0, np.pi, n)[parcel]
    rows = 1 + 0.06 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / 3.5)
    crop = (SIG["crop"][:, None, None] * green + SIG["soil"][:, None, None] * (1 - green)) * rows
    m = cm == 5
    spec[:, m] = crop[:, m]
    vigour = rng.normal(1, 0.07, n)[parcel] * (1 + 0.05 * smooth(rng, (h, w), 6))
    grass = SIG["grass"][:, None, None] * vigour
    grass[3:5] *= rng.normal(1, 0.08, n)[parcel]
    m = cm == 3
    spec[:, m] = grass[:, m]
    crowns = smooth(rng, (h, w), 1.3)
    canopy = (1 + 0.18 * crowns) * np.where(crowns < -0.9, 0.55, 1.0)
    m = cm == 2
    spec[:, m] = SIG["forest"][:, None] * canopy[m]
    roofs = np.stack([SIG["roof_grey"], SIG["roof_red"], SIG["roof_dark"], SIG["soil"]])
    nb = lay["building"].max() + 1
    kind = rng.choice(4, nb, p=[0.4, 0.3, 0.2, 0.1])
    garden = rng.uniform(0, 0.4, nb)
    m = cm == 4
    b = lay["building"][m]
    hf = 1 + 0.1 * smooth(rng, (h, w), 0.5)[m]
    spec[:, m] = (roofs[kind[b]].T * (1 - garden[b]) + SIG["grass"][:, None] * garden[b]) * hf
    m = lay["road"]
    spec[:, m] = SIG["asphalt"][:, None] * (1 + 0.05 * rng.standard_normal(m.sum()))
    m = cm == 1
    sediment = np.maximum(0, smooth(rng, (h, w), 0.1 * s))[m]
    spec[:, m] = SIG["water"][:, None] * (1 + 0.08 * smooth(rng, (h, w), 0.1 * s)[m])
    spec[:4, m] += np.array([150, 180, 140, 60], np.float32)[:, None] * sediment
    # Soft illumination: a linear ramp in a random direction plus a broad smooth field.
    a = rng.uniform(0, 2 * np.pi)
    ramp = (xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a)
    spec *= (1 + 0.1 * ramp / np.abs(ramp).max() + 0.04 * smooth(rng, (h, w), 0.3 * s)).astype(np.float32)
    cols = [min(k, 4 + (k - 4) % 3) for k in range(bands)]
    scale = np.array([1 + 0.04 * max(0, (k - 4) // 3) for k in range(bands)])[:, None, None]
    img = blur(spec[cols], 0.6) * scale
    img += rng.standard_normal(img.shape) * (20 + 0.02 * img)
    out = np.clip(np.rint(img), 1, 65535).astype(np.uint16)
    if hole:
        out[:, lay["hole"]] = 0
    return out


def band_names(bands: int) -> list[str]:
    """BGR + NIR, then red edge and SWIR repeated (scaled) for any further bands."""
    return [BASE_BANDS[k] if k < 7 else f"{BASE_BANDS[4 + (k - 4) % 3]}_{(k - 4) // 3}" for k in range(bands)]


def _write_tif(
    path: str, data: np.ndarray, gt: tuple, srs: osr.SpatialReference, dtype: int, nodata: int, names: list[str]
) -> None:
    """Tiled, DEFLATE-compressed GeoTIFF with the same nodata on every band."""
    opts = ["TILED=YES", "COMPRESS=DEFLATE", "PREDICTOR=2"]
    ds = gdal.GetDriverByName("GTiff").Create(path, data.shape[2], data.shape[1], data.shape[0], dtype, opts)
    ds.SetGeoTransform(gt)
    ds.SetSpatialRef(srs)
    for i, name in enumerate(names):
        band = ds.GetRasterBand(i + 1)
        band.SetNoDataValue(nodata)
        band.SetDescription(name)
        band.WriteArray(data[i])
    ds = None


def _write_labels(
    path: str,
    truth: np.ndarray,
    gt: tuple,
    srs: osr.SpatialReference,
    labels_epsg: int,
    fraction: float,
    rng: np.random.Generator,
) -> None:
    """Polygonize the class map (class 0 and the hole left out) and keep a random subset."""
    mem = gdal.GetDriverByName("MEM").Create("", truth.shape[1], truth.shape[0], 1, gdal.GDT_Byte)
    mem.SetGeoTransform(gt)
    mem.SetSpatialRef(srs)
    band = mem.GetRasterBand(1)
    band.WriteArray(np.where(truth == TRUTH_NODATA, 0, truth))
    vec = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = vec.CreateLayer("polygons", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTInteger))
    gdal.Polygonize(band, band, layer, 0, [])
    polys = [(f.GetField(0), f.GetGeometryRef().Clone()) for f in layer]
    cls = np.array([c for c, _ in polys])
    area = np.array([g.GetArea() for _, g in polys])
    keep = rng.random(len(polys)) < fraction
    for c in np.unique(cls):
        if not keep[cls == c].any():
            keep[np.flatnonzero(cls == c)[np.argmax(area[cls == c])]] = True
    dst = _srs(labels_epsg)
    ct = osr.CoordinateTransformation(srs, dst)
    out = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    lyr = out.CreateLayer("labels", dst, ogr.wkbPolygon)
    lyr.CreateField(ogr.FieldDefn("class", ogr.OFTInteger))
    lyr.CreateField(ogr.FieldDefn("name", ogr.OFTString))
    lyr.StartTransaction()
    for (c, geom), k in zip(polys, keep, strict=True):
        if k:
            geom.Transform(ct)
            feat = ogr.Feature(lyr.GetLayerDefn())
            feat.SetField("class", int(c))
            feat.SetField("name", CLASSES[int(c)])
            feat.SetGeometry(geom)
            lyr.CreateFeature(feat)
    lyr.CommitTransaction()
    out = None


@with_gdal_exceptions
def make_sample_scene(
    out_dir: str,
    seed: int = 0,
    width: int = 640,
    height: int = 480,
    bands: int = 4,
    pixel_size: float = 2.0,
    epsg: int = 32633,
    labels_epsg: int = 4326,
    nodata_hole: bool = True,
    label_fraction: float = 1.0,
) -> SampleScene:
    """Write sample_scene.tif, sample_labels.gpkg and sample_truth.tif; same seed, same pixels."""
    if min(width, height) < 32 or bands < 1 or not 0 < label_fraction <= 1:
        raise ValueError("need width, height >= 32, bands >= 1 and 0 < label_fraction <= 1")
    paths = [os.path.join(out_dir, f) for f in FILES]
    for p in paths:
        if os.path.exists(p):
            raise FileExistsError(p)
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    lay = _layout(rng, height, width)
    img = _pixels(rng, lay, bands, nodata_hole)
    truth = lay["cm"].copy()
    if nodata_hole:
        truth[lay["hole"]] = TRUTH_NODATA
    srs = _srs(epsg)
    gt = (ORIGIN[0], pixel_size, 0.0, ORIGIN[1], 0.0, -pixel_size)
    _write_tif(paths[0], img, gt, srs, gdal.GDT_UInt16, 0, band_names(bands))
    _write_tif(paths[2], truth[None], gt, srs, gdal.GDT_Byte, TRUTH_NODATA, ["class"])
    _write_labels(paths[1], truth, gt, srs, labels_epsg, label_fraction, np.random.default_rng((seed, 1)))
    return SampleScene(paths[0], paths[1], "class", "name", dict(CLASSES))


def main(argv: list[str] | None = None) -> int:
    """Command line: write a scene into OUT_DIR and print the raster and label paths."""
    parser = argparse.ArgumentParser(prog="python -m geoseg.core.sample", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args(argv)
    try:
        scene = make_sample_scene(args.out_dir, seed=args.seed, width=args.width, height=args.height)
    except (FileExistsError, ValueError) as exc:
        parser.error(f"{exc} (pick an empty folder and width, height >= 32)")
    print(f"{scene.raster}\n{scene.labels}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
