using PortAzure.AzureDevOpsEmulator;

// Content root at the app's own folder, wherever it was started from, as the services have it.
var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args, ContentRootPath = AppContext.BaseDirectory });
builder.AddServiceDefaults();
builder.AddEmulatorServices();

var app = builder.Build();
app.MapDefaultEndpoints();
app.MapEmulatorEndpoints();
app.Run();
