export const GRIDWORK_VERSION = '0.1.0';
