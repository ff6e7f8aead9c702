# Copy to secrets.py (untracked) on the board, or let scripts/deploy.py generate it from the fleet file.
SECRETS = {
    'wifi_ssid': 'my-network',
    'wifi_password': 'change-me',
    'mqtt_user': 'dev-1',
    'mqtt_password': 'change-me',
}
