using PortAzure.Ingress;

// Content root at the app's own folder, wherever it was started from: appsettings.json holds the operator API's routes.
var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args, ContentRootPath = AppContext.BaseDirectory });
builder.AddServiceDefaults();
builder.AddIngressServices();

var app = builder.Build();
app.MapDefaultEndpoints();
app.MapIngress();
app.Run();
