using PortAzure.AzureDevOpsEmulator;

var builder = WebApplication.CreateBuilder(RelayHost.Options(args));
builder.AddServiceDefaults();
builder.AddEmulatorServices();

var app = builder.Build();
app.MapDefaultEndpoints();
app.MapEmulatorEndpoints();
return app.RunUntilStopped();
