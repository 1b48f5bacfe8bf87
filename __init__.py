"""QGIS entry point. Imports nothing heavy: the plugin class is loaded only when QGIS asks."""


def classFactory(iface):
    from .plugin import GeoSegPlugin

    return GeoSegPlugin(iface)
