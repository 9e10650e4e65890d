"""Generated from ``proto/extauthz/feed/v1/feed.proto`` by ``make proto``; do not edit."""
