"""What shadowdb's tests share: seeding, backends, the CLI runner, proxies, subprocess scripts."""
