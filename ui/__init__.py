"""Qt dialogs, QgsTask wrappers and layer styling: thin over core/."""
