<?php
// Send one message with PHP's mail() through relay-agent's sendmail.
//
//   php send.php [recipient]          (or MAIL_TO=... php send.php)
//   php -d sendmail_path="/usr/sbin/sendmail -t -i" send.php ops@example.com
//
// Environment (all optional): MAIL_TO, MAIL_FROM (must be in a domain relay-agent
// signs for), MAIL_SUBJECT.
$to = $argv[1] ?? (getenv('MAIL_TO') ?: 'ops@example.com');
$from = getenv('MAIL_FROM') ?: 'noreply@example.com';
$subject = getenv('MAIL_SUBJECT') ?: 'Hello from PHP mail()';

$headers = [
    'From' => "Web App <$from>",
    'Reply-To' => $from,
    'MIME-Version' => '1.0',
    'Content-Type' => 'text/plain; charset=UTF-8',
    'Content-Transfer-Encoding' => '8bit',
];
$body = "Sent by PHP " . PHP_VERSION . " via mail().\r\nSmörgåsbord: UTF-8 survives the trip.\r\n";

// The 5th argument is appended to sendmail_path: "-f" sets the envelope sender
// (Return-Path, where bounces go). Without it relay-agent uses the From: address
// or, for local users such as www-data, [sender] default_from.
// escapeshellarg: PHP passes this string through a shell.
$ok = mail($to, $subject, $body, $headers, '-f' . escapeshellarg($from));

// false means sendmail exited non-zero (its one-line reason is on stderr / the PHP log).
fwrite(STDERR, $ok ? "queued for $to\n" : "mail() failed\n");
exit($ok ? 0 : 1);
