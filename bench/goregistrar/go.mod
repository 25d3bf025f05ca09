module goregistrar

go 1.19
