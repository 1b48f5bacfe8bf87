"""Qt dialogs and QgsTask wrappers: thin over core/ (QGIS layers reach core through adapter/)."""
