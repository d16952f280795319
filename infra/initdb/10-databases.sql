-- Extra databases for the compose stack (the image creates `infgate` itself).
CREATE DATABASE mlflow OWNER infgate;
CREATE DATABASE prefect OWNER infgate;
