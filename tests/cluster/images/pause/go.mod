module kdev.local/pause

go 1.22
