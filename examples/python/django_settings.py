"""Django settings for sending mail through relay-agent (merge into your settings.py).

relay-agent's config must enable the loopback SMTP listener:

    [listen]
    smtp = "127.0.0.1:2525"

Django's SMTP backend then hands each message to the local agent, which queues it
durably, DKIM-signs it and relays it over STARTTLS+AUTH: no relay password and no
TLS settings in Django. The agent answers 250 only once the message is on disk, so
send_mail() returning means the mail is safe even if the relay is down.
"""

EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = "127.0.0.1"
EMAIL_PORT = 2525
# Loopback only: no TLS, no AUTH (the agent never offers AUTH and refuses non-loopback binds).
EMAIL_USE_TLS = False
EMAIL_USE_SSL = False
EMAIL_HOST_USER = ""
EMAIL_HOST_PASSWORD = ""
EMAIL_TIMEOUT = 30
# From: must be in a domain relay-agent holds a DKIM key for (policy "reject" refuses
# others with 550, which send_mail raises as SMTPDataError).
DEFAULT_FROM_EMAIL = "Web App <noreply@example.com>"
SERVER_EMAIL = "django@example.com"  # errors mailed to ADMINS
ADMINS = [("Ops", "ops@example.com")]

# The alternative, without the TCP listener: Django has no sendmail backend of its
# own, but the few lines in django_sendmail_backend.py (next to this file) pipe each
# message to /usr/sbin/sendmail, which also works while the daemon is down
# (the message waits in the maildrop):
#
# EMAIL_BACKEND = "myproject.mail.SendmailBackend"   # wherever you put that class
