"""Data services: the SQL endpoint (Spark's Thrift JDBC/ODBC server and Spark Connect in one JVM) and the REST
read API over gold (FastAPI reading Delta with deltalake, no JVM). Both follow conf/access.yaml."""
