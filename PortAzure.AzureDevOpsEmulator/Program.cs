using PortAzure.AzureDevOpsEmulator;

return RelayHost.Run(args,
    builder =>
    {
        builder.AddServiceDefaults();
        builder.AddEmulatorServices();
    },
    app =>
    {
        app.MapDefaultEndpoints();
        app.MapEmulatorEndpoints();
    });
