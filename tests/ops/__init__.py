"""Operations tests: backup, restore, retention, scheduler, systemd, the whole story."""
