# boot.py: runs first on every boot (installed by `mpota deploy` when the board has none).
# Keep it small and unable to fail: it runs before mpota.boot() counts a trial attempt.
# It only starts the Wi-Fi connection; main.py's trial checks wait for it to come up.
#
# Wi-Fi credentials come from /wifi.json: {"ssid": "...", "password": "..."}.


def _start_wifi():
    try:
        import json

        import network

        with open("/wifi.json") as f:
            creds = json.load(f)
        wlan = network.WLAN(network.STA_IF)
        wlan.active(True)
        if not wlan.isconnected():
            wlan.connect(creds["ssid"], creds.get("password", ""))
    except Exception as e:  # no network module, no /wifi.json, bad credentials
        print("boot.py: Wi-Fi not started:", e)


_start_wifi()
del _start_wifi
