using PortAzure.Dispatcher;
using PortAzure.Dispatcher.Api;

return RelayHost.Run(args,
    builder =>
    {
        builder.AddServiceDefaults();
        builder.AddDispatcherServices();
    },
    app =>
    {
        app.MapDefaultEndpoints();
        app.MapOperatorApi();
    });
