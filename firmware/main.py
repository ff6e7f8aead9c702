# One wake: sample, buffer, maybe publish, deep sleep. See app.py.
import app

app.main()
